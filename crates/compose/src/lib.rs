//! # recompose-compose
//!
//! Compositional generation with diffusion models, after Du et al., *Reduce, Reuse, Recycle:
//! Compositional Generation with Energy-Based Diffusion Models and MCMC* (ICML 2023). This crate
//! will hold:
//!
//! - score and energy parameterizations of a diffusion model (E = ‖g(x,t) − x‖² or ½‖g(x,t)‖²);
//! - composition operators over (log-density, score) pairs: weighted products (AND), mixtures
//!   (OR, energy models only), negation (NOT), classifier-free and classifier guidance;
//! - annealed MCMC samplers (ULA, U-HMC, MALA, HMC) interleaved with reverse diffusion;
//! - a small expression language such as `1.3*box_large NOT 0.3*box_small`.
//!
//! It is empty for now: its contents arrive with the composition work.
