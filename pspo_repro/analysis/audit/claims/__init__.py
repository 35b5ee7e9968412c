"""The audited claims, one module each: its texts, the numbers it gathers from the runs, its rule (a pure
function of those numbers, beside the rule's printed text), its verdict, its table and figure."""
