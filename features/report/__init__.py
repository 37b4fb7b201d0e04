"""The model-validation report: inputs, statistics, reference model, summary, HTML, assembly."""
