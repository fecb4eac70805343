"""arq worker: process, reply and deliver jobs, the sweep, and the worker's start-up."""
