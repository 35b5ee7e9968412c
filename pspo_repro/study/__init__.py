"""The study: profiles expanded into runs, launched in workers or Slurm jobs, each in its run folder."""
