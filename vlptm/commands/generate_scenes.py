"""``vlptm generate-scenes``: write the generated scene world (placeholder replaced below)."""
