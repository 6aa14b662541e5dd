"""Programs written from the public documentation alone, never from the built-in classes."""
