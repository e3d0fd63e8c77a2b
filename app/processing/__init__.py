"""After ingest: project events into customer state (projection.py), claim and process them
(processor.py), and run the side effects they cause (actions.py)."""
