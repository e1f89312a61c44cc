"""Device simulator: a real MQTT client that follows the documented device topic contract."""
