"""Figures of the paper, rendered from the store, and the HTML page that shows them."""
