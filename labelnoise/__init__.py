"""labelnoise: training deep networks on noisy labels (MentorNet, joint optimization, MentorMix)."""
