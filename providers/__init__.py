"""Provider adapters: one module per provider, each turning an API into Offers."""
