"""Paper tables: aggregate reproduced numbers beside the papers' values."""
