//! Writing glTF binaries (.glb): a small builder over JSON values with one
//! embedded buffer, and a canonical JSON writer (sorted keys, shortest
//! floats) so the bytes never depend on map order or feature flags.

use serde_json::{Value, json};

use crate::mesh::Geometry;

/// A PBR metallic-roughness material. Texture fields are URIs relative to
/// the .glb (KTX2 files).
#[derive(Debug, Clone, PartialEq)]
pub struct Material {
    pub name: String,
    pub base_color: [f32; 4],
    pub base_color_texture: Option<String>,
    pub normal_texture: Option<String>,
    pub metallic: f32,
    pub roughness: f32,
    pub emissive: [f32; 3],
    /// `KHR_materials_unlit`.
    pub unlit: bool,
    /// Alpha-tested at this cutoff (`alphaMode: MASK`).
    pub alpha_cutoff: Option<f32>,
    pub double_sided: bool,
    /// Clamp the textures to the edge instead of repeating them.
    pub clamp: bool,
}

impl Material {
    pub fn new(name: &str, base_color: [f32; 4], roughness: f32) -> Material {
        Material {
            name: name.to_owned(),
            base_color,
            base_color_texture: None,
            normal_texture: None,
            metallic: 0.0,
            roughness,
            emissive: [0.0; 3],
            unlit: false,
            alpha_cutoff: None,
            double_sided: false,
            clamp: false,
        }
    }

    pub fn textured(mut self, base: &str, normal: Option<&str>) -> Material {
        self.base_color_texture = Some(base.to_owned());
        self.normal_texture = normal.map(str::to_owned);
        self
    }
}

/// A node: a name, an optional mesh, a transform and children.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub mesh: Option<usize>,
    pub translation: [f32; 3],
    /// Rotation about +Y in radians.
    pub yaw: f64,
    /// Uniform scale.
    pub scale: f32,
    pub children: Vec<usize>,
    pub extras: Option<Value>,
}

impl Node {
    pub fn new(name: &str) -> Node {
        Node { name: name.to_owned(), mesh: None, translation: [0.0; 3], yaw: 0.0, scale: 1.0, children: Vec::new(), extras: None }
    }
}

/// A float as the shortest decimal that reads back as the same f32.
pub fn num(x: f32) -> Value {
    let v: f64 = format!("{x}").parse().unwrap_or(0.0);
    json!(v)
}

fn nums(xs: &[f32]) -> Value {
    Value::Array(xs.iter().map(|&x| num(x)).collect())
}

const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const FLOAT: u32 = 5126;
const UNSIGNED_SHORT: u32 = 5123;
const UNSIGNED_INT: u32 = 5125;

#[derive(Debug, Default)]
pub struct Builder {
    bin: Vec<u8>,
    buffer_views: Vec<Value>,
    accessors: Vec<Value>,
    meshes: Vec<Value>,
    materials: Vec<Value>,
    textures: Vec<Value>,
    images: Vec<String>,
    nodes: Vec<Value>,
    /// (image uri, clamp) of each texture, to share textures.
    texture_keys: Vec<(String, bool)>,
    unlit_used: bool,
}

impl Builder {
    fn view(&mut self, bytes: &[u8], target: u32) -> usize {
        while !self.bin.len().is_multiple_of(4) {
            self.bin.push(0);
        }
        self.buffer_views.push(json!({
            "buffer": 0, "byteOffset": self.bin.len(), "byteLength": bytes.len(), "target": target,
        }));
        self.bin.extend_from_slice(bytes);
        self.buffer_views.len() - 1
    }

    fn accessor(&mut self, view: usize, component: u32, count: usize, kind: &str, bounds: Option<(Value, Value)>) -> usize {
        let mut a = json!({ "bufferView": view, "componentType": component, "count": count, "type": kind });
        if let Some((min, max)) = bounds {
            a["min"] = min;
            a["max"] = max;
        }
        self.accessors.push(a);
        self.accessors.len() - 1
    }

    fn texture(&mut self, uri: &str, clamp: bool) -> usize {
        let key = (uri.to_owned(), clamp);
        if let Some(i) = self.texture_keys.iter().position(|k| *k == key) {
            return i;
        }
        let image = match self.images.iter().position(|u| u == uri) {
            Some(i) => i,
            None => {
                self.images.push(uri.to_owned());
                self.images.len() - 1
            }
        };
        self.textures.push(json!({ "source": image, "sampler": usize::from(clamp) }));
        self.texture_keys.push(key);
        self.textures.len() - 1
    }

    pub fn material(&mut self, m: &Material) -> usize {
        let mut pbr = json!({
            "baseColorFactor": nums(&m.base_color), "metallicFactor": num(m.metallic), "roughnessFactor": num(m.roughness),
        });
        if let Some(uri) = &m.base_color_texture {
            pbr["baseColorTexture"] = json!({ "index": self.texture(uri, m.clamp) });
        }
        let mut mat = json!({ "name": m.name, "pbrMetallicRoughness": pbr });
        if let Some(uri) = &m.normal_texture {
            mat["normalTexture"] = json!({ "index": self.texture(uri, m.clamp) });
        }
        if m.emissive != [0.0; 3] {
            mat["emissiveFactor"] = nums(&m.emissive);
        }
        if let Some(cutoff) = m.alpha_cutoff {
            mat["alphaMode"] = json!("MASK");
            mat["alphaCutoff"] = num(cutoff);
        }
        if m.double_sided {
            mat["doubleSided"] = json!(true);
        }
        if m.unlit {
            mat["extensions"] = json!({ "KHR_materials_unlit": {} });
            self.unlit_used = true;
        }
        self.materials.push(mat);
        self.materials.len() - 1
    }

    /// A mesh with one primitive per (geometry, material).
    pub fn mesh(&mut self, name: &str, primitives: &[(&Geometry, usize)], extras: Option<Value>) -> usize {
        let prims: Vec<Value> = primitives
            .iter()
            .map(|(g, material)| {
                let vertex_bytes = |f: &dyn Fn(&crate::mesh::Vertex) -> Vec<f32>| -> Vec<u8> {
                    g.vertices.iter().flat_map(f).flat_map(f32::to_le_bytes).collect()
                };
                let (lo, hi) = g.bounds();
                let pos = self.view(&vertex_bytes(&|v| v.pos.to_vec()), ARRAY_BUFFER);
                let pos = self.accessor(pos, FLOAT, g.vertices.len(), "VEC3", Some((nums(&lo), nums(&hi))));
                let normal = self.view(&vertex_bytes(&|v| v.normal.to_vec()), ARRAY_BUFFER);
                let normal = self.accessor(normal, FLOAT, g.vertices.len(), "VEC3", None);
                let uv = self.view(&vertex_bytes(&|v| v.uv.to_vec()), ARRAY_BUFFER);
                let uv = self.accessor(uv, FLOAT, g.vertices.len(), "VEC2", None);
                let (bytes, component): (Vec<u8>, u32) = if g.vertices.len() <= usize::from(u16::MAX) {
                    (g.indices.iter().flat_map(|&i| (i as u16).to_le_bytes()).collect(), UNSIGNED_SHORT)
                } else {
                    (g.indices.iter().flat_map(|&i| i.to_le_bytes()).collect(), UNSIGNED_INT)
                };
                let view = self.view(&bytes, ELEMENT_ARRAY_BUFFER);
                let indices = self.accessor(view, component, g.indices.len(), "SCALAR", None);
                json!({
                    "attributes": { "POSITION": pos, "NORMAL": normal, "TEXCOORD_0": uv },
                    "indices": indices, "material": material, "mode": 4,
                })
            })
            .collect();
        let mut mesh = json!({ "name": name, "primitives": prims });
        if let Some(extras) = extras {
            mesh["extras"] = extras;
        }
        self.meshes.push(mesh);
        self.meshes.len() - 1
    }

    pub fn node(&mut self, node: Node) -> usize {
        let mut n = json!({ "name": node.name });
        if let Some(mesh) = node.mesh {
            n["mesh"] = json!(mesh);
        }
        if node.translation != [0.0; 3] {
            n["translation"] = nums(&node.translation);
        }
        if node.yaw != 0.0 {
            let (s, c) = crate::dmath::sin_cos(node.yaw / 2.0);
            n["rotation"] = nums(&[0.0, s as f32, 0.0, c as f32]);
        }
        if node.scale != 1.0 {
            n["scale"] = nums(&[node.scale; 3]);
        }
        if !node.children.is_empty() {
            n["children"] = json!(node.children);
        }
        if let Some(extras) = node.extras {
            n["extras"] = extras;
        }
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// The .glb bytes, with one scene holding `roots`.
    pub fn finish(mut self, scene: &str, roots: &[usize]) -> Vec<u8> {
        while !self.bin.len().is_multiple_of(4) {
            self.bin.push(0);
        }
        let mut root = json!({
            "asset": { "version": "2.0", "generator": crate::ktx::WRITER },
            "scene": 0,
            "scenes": [{ "name": scene, "nodes": roots }],
            "nodes": self.nodes,
            "meshes": self.meshes,
            "materials": self.materials,
            "accessors": self.accessors,
            "bufferViews": self.buffer_views,
            "buffers": [{ "byteLength": self.bin.len() }],
        });
        if !self.textures.is_empty() {
            root["textures"] = json!(self.textures);
            root["images"] = Value::Array(self.images.iter().map(|u| json!({ "uri": u })).collect());
            // 10497 repeat, 33071 clamp to edge; trilinear minification.
            root["samplers"] = json!([
                { "magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497 },
                { "magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071 },
            ]);
        }
        if self.unlit_used {
            root["extensionsUsed"] = json!(["KHR_materials_unlit"]);
        }
        let mut text = String::new();
        write_canonical(&root, &mut text);
        glb(text.into_bytes(), self.bin)
    }
}

/// JSON with object keys sorted, whatever map type serde_json was built with.
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The GLB container: header, JSON chunk (space-padded), BIN chunk.
fn glb(mut json: Vec<u8>, bin: Vec<u8>) -> Vec<u8> {
    while !json.len().is_multiple_of(4) {
        json.push(b' ');
    }
    let total = 12 + 8 + json.len() + 8 + bin.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&json);
    out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    out.extend_from_slice(b"BIN\0");
    out.extend_from_slice(&bin);
    out
}
