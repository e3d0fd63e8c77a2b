"""A stand-in for WeCom: builds the callbacks WeCom's servers would send (more to come)."""
