"""The training engine: data, models, the loss of eq. (6), collapse metrics, one trial (torch, no Ray)."""
