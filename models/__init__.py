"""The ML package, pure: features, the setpoint model and its ONNX export, the energy baseline with its
Guideline 14 metrics, the policy, the A/B statistics and the loading of a model file.

No database, no Prefect, no BACnet: the edge, central and a data scientist's notebook use it alike.
Importing this package imports nothing heavy; each module brings what it needs (only `models.setpoint`
and `models.baseline` need scikit-learn).
"""
