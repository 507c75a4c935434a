"""Multi-step jobs (layer 5): they read stores, call io, ops and nn, and write stores."""
