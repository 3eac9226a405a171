"""The application: the ``imgcurate`` command, the demo, the HTML report, notebook display and the sample data."""
