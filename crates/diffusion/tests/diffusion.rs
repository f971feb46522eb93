//! The integration tests of `recompose-diffusion`, one binary: schedules against their closed
//! forms and published reference values, samplers against analytic Gaussian targets.

#[path = "diffusion/energy_unet.rs"]
mod energy_unet;
#[path = "diffusion/provenance.rs"]
mod provenance;
#[path = "diffusion/sampling.rs"]
mod sampling;
#[path = "diffusion/schedule.rs"]
mod schedule;
#[path = "diffusion/text.rs"]
mod text;
#[path = "diffusion/train.rs"]
mod train;
#[path = "diffusion/unet.rs"]
mod unet;
