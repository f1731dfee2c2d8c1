"""The world model and its loop."""
