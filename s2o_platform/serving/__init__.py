"""Online translation: request decoding and encoding (codec), service settings, the Ray Serve application."""
