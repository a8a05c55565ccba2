use embedstream_pipeline::embed::tokenize::TextTokenizer;
use embedstream_pipeline::models::ModelConfig;

use crate::common::*;

#[test]
fn token_ids_match_sentence_transformers() {
    for model in MODELS {
        let (spec, dir) = model_dir(model);
        let config = ModelConfig::load(&dir).unwrap();
        let reference = reference(&spec);
        assert_eq!(config.max_seq_length, reference.max_seq_length, "{model}");
        assert_eq!(config.hidden_size, reference.dimension, "{model}");
        let tokenizer = TextTokenizer::load(&dir, config.max_seq_length).unwrap();
        for t in &reference.texts {
            let ids = tokenizer.encode(&t.text).unwrap().ids;
            assert_eq!(ids, t.input_ids, "{model} {}", t.name);
        }
    }
}

#[test]
fn configs_are_read_from_the_model_folder() {
    use embedstream_topics::catalog::{Architecture, Pooling};
    let (spec, dir) = model_dir("minilm-l6-v2@1");
    let c = ModelConfig::load(&dir).unwrap();
    assert_eq!(c.architecture, Architecture::Bert);
    assert_eq!((c.num_layers, c.num_heads, c.hidden_size), (6, 12, 384));
    assert_eq!(c.max_seq_length, 256);
    assert_eq!(c.pooling, Pooling::Mean);
    assert!(c.normalize);
    assert_eq!(c.hidden_size as u32, spec.dimension);
    let (spec, dir) = model_dir("mpnet-base-v2@1");
    let c = ModelConfig::load(&dir).unwrap();
    assert_eq!(c.architecture, Architecture::Mpnet);
    assert_eq!((c.num_layers, c.num_heads, c.hidden_size), (12, 12, 768));
    assert_eq!(c.max_seq_length, 384);
    assert_eq!(c.relative_attention_num_buckets, 32);
    assert_eq!(c.hidden_size as u32, spec.dimension);
}
