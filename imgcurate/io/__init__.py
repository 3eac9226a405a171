"""Reading and writing WebDataset shards (the first step of the data path)."""
