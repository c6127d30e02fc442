//! What the assets are: the avatars, the plaza and the textures they wear.

pub mod avatars;
pub mod plaza;
pub mod textures;
