"""Tables, the engine, and the reads and writes on them."""
