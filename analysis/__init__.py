"""vggbn analysis: exported sweep files -> DataFrames -> tables and figures. Never reads Ray internals."""
