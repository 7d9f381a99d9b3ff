"""The policy chain. Filled in by the policy modules; see default_policies()."""
