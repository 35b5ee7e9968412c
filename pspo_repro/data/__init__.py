"""Problems: the one record shape, the benchmark loaders, the synthetic arithmetic domain and the prompts."""
