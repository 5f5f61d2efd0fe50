"""The benchmark (`mpee-bench`): measuring on the device (measure, records, env), reporting anywhere (analysis,
results, render, report, tradeoff), and texts/s by batch size (throughput/). Imports core, text, bundle; nothing
else imports it."""
