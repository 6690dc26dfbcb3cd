"""Flower: the ClientApp (a site on a SuperNode), the ServerApp (the sequential learner) and a
local deployment (``smg-sim flower up``)."""
