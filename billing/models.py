# The billing layer has no tables yet; its models arrive with their issue. It sits above inventory and
# accounts in the layering and may import from them only.
