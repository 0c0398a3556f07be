"""The Streamlit dashboard over profiles, plans, simulations and runs (nothing imports it)."""
