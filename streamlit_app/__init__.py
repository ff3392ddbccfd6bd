"""The Streamlit app (later issues)."""
