"""What the services share: configuration, database, errors, interceptors and server bootstrap."""
