"""What results are written as: plain-text tables (tables), PNG figures (figures), JSON files with the
benchmark envelope (output). Shared by bench, sweep, eval and experiments; depends on none of them."""
