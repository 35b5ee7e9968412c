"""Analysis: run folders read into frames, tables, figures, comparisons between arms (inference), the
notebooks' report and the claims audit."""
