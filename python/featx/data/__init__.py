"""Real data that ships inside installed packages (no downloads): photos and digits."""
