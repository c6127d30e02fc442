// Impostor cards: a far-away avatar drawn as one textured quad (the
// `<avatar>_impostor` mesh) that the client turns towards the camera. The
// texture holds the avatar painted from the front with its lighting baked in
// and alpha around the silhouette.
//
// The fragment shader of a Bevy 0.19 `Material` (see docs/assets.md):
// Bevy's mesh vertex shader feeds it (locations 0-2 of its VertexOutput are
// world position, world normal and UV) and the material's bindings live in
// bind group 3 (Bevy's MATERIAL_BIND_GROUP). Self-contained on purpose, so
// `plaza-assets check` can validate it with naga alone.

struct ImpostorParams {
    // Multiplies the baked colour (per-avatar tint, time-of-day dimming).
    tint: vec4<f32>,
    // Texels whose alpha is below this are cut away.
    alpha_cutoff: f32,
    // 0 = fully shown, 1 = gone: a dithered fade for LOD cross-fades.
    fade: f32,
    _padding: vec2<f32>,
}

@group(3) @binding(0) var<uniform> params: ImpostorParams;
@group(3) @binding(1) var impostor_texture: texture_2d<f32>;
@group(3) @binding(2) var impostor_sampler: sampler;

struct FragmentInput {
    @builtin(position) position: vec4<f32>,
    @location(0) world_position: vec4<f32>,
    @location(1) world_normal: vec3<f32>,
    @location(2) uv: vec2<f32>,
}

// Ordered 4x4 dither threshold in (0, 1) for a pixel.
fn bayer4(pixel: vec2<u32>) -> f32 {
    var matrix = array<f32, 16>(
        0.0, 8.0, 2.0, 10.0,
        12.0, 4.0, 14.0, 6.0,
        3.0, 11.0, 1.0, 9.0,
        15.0, 7.0, 13.0, 5.0,
    );
    let i = (pixel.y % 4u) * 4u + pixel.x % 4u;
    return (matrix[i] + 0.5) / 16.0;
}

@fragment
fn fragment(in: FragmentInput) -> @location(0) vec4<f32> {
    let texel = textureSample(impostor_texture, impostor_sampler, in.uv);
    if texel.a < params.alpha_cutoff {
        discard;
    }
    if params.fade > bayer4(vec2<u32>(in.position.xy)) {
        discard;
    }
    return vec4<f32>(texel.rgb * params.tint.rgb, 1.0);
}
