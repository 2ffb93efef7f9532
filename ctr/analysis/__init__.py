"""Analysis: statistics of code tables, the report, steering."""
