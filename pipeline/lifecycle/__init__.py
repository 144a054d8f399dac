"""What happens to published artifacts: channels, promotion, garbage collection, Triton export."""
