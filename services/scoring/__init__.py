"""The scoring service: versioned value models, scoring runs over the whole base, online scoring."""
