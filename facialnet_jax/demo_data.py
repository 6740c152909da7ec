"""`python -m facialnet_jax.demo_data OUT_DIR`: writes the SYNTHETIC demo data set in the raw
Adience layout (facialnet_jax.data.demo_data, which configs/demo.py builds from on first use)."""

from facialnet_jax.data import demo_data

if __name__ == '__main__':
  demo_data.main()
