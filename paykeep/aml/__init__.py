"""Financial crime: sanctions screening, real-time rules, graph typologies, cases."""
