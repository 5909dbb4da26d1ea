"""What OpenRLHF's trainer runs of ours: the TAPO / step-credit experience stage, our PolicyLoss, their args."""
