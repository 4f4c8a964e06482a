"""Benches: measurements that print ratios taken in one run (machines are noisy), one module per bench,
each with ``main(argv) -> int``. ``openood-ext bench WHAT`` dispatches through :mod:`.dispatch`."""
