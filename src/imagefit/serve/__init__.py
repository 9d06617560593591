"""The local prediction service (`imagefit serve`)."""
