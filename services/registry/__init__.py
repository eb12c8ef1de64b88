"""The customer registry service: customers, their account tree and their signals."""
