"""Small stand-ins for hardware libraries that only exist on the target boards."""
