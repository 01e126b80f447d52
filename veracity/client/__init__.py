"""The site agent: datasets, approvals, privacy budget, DP training and the Flower ClientApp."""
