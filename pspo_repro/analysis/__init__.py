"""Analysis: run folders read into frames, tables, figures, the notebooks' report and the claims audit."""
