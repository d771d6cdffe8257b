package dev.abm.peer;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;
import org.apache.kafka.streams.state.TimestampedKeyValueStore;
import org.apache.kafka.streams.state.ValueAndTimestamp;

/**
 * The peer: the scoring as a competent Kafka Streams user would write it. Events are read as
 * bytes and decoded with Avro's own Java library from our .avsc files and single-object framing;
 * the TAL is a GlobalKTable (tiers); each account's state lives in a persistent key-value store;
 * crossings (JSON) and latest scores (JSON, compacted) go to output topics; exactly_once_v2.
 *
 * Environment: PEER_BOOTSTRAP, PEER_APP_ID, PEER_INPUT, PEER_ACCOUNTS, PEER_CROSSINGS,
 * PEER_SCORES, PEER_SCHEMAS (the schemas/avro directory), PEER_COMMIT_MS (default 250),
 * PEER_STATE_DIR, PEER_INSTANCE_ID (static membership when set).
 */
public final class ScoringApp {
    static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }

    static Schema schema(String dir, String file) throws IOException {
        return new Schema.Parser().parse(Files.readString(Path.of(dir, file)));
    }

    public static void main(String[] args) throws Exception {
        String schemas = env("PEER_SCHEMAS", "schemas/avro");
        BinaryMessageDecoder<GenericRecord> events = new BinaryMessageDecoder<>(GenericData.get(), schema(schemas, "engagement_event.avsc"));
        BinaryMessageDecoder<GenericRecord> accounts = new BinaryMessageDecoder<>(GenericData.get(), schema(schemas, "account.avsc"));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, env("PEER_APP_ID", "abm-streams-peer"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env("PEER_BOOTSTRAP", "127.0.0.1:9092"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Integer.parseInt(env("PEER_COMMIT_MS", "250")));
        props.put(StreamsConfig.STATE_DIR_CONFIG, env("PEER_STATE_DIR", "/tmp/abm-streams-peer"));
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        // Static membership, like the scorer's: a restarted instance takes its partitions back at
        // once instead of waiting for the dead member's session to time out.
        String instance = env("PEER_INSTANCE_ID", "");
        if (!instance.isEmpty()) {
            props.put(StreamsConfig.consumerPrefix(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG), instance);
        }

        // Output topics (brokers here do not auto-create topics).
        try (org.apache.kafka.clients.admin.Admin admin = org.apache.kafka.clients.admin.Admin.create(
                java.util.Map.of("bootstrap.servers", env("PEER_BOOTSTRAP", "127.0.0.1:9092")))) {
            var existing = admin.listTopics().names().get();
            var wanted = new java.util.ArrayList<org.apache.kafka.clients.admin.NewTopic>();
            for (String t : new String[] {env("PEER_CROSSINGS", "abm.peer.score-crossings"), env("PEER_SCORES", "abm.peer.account-scores")}) {
                if (!existing.contains(t)) wanted.add(new org.apache.kafka.clients.admin.NewTopic(t, 6, (short) 1));
            }
            if (!wanted.isEmpty()) admin.createTopics(wanted).all().get();
        }

        StreamsBuilder builder = new StreamsBuilder();
        // The TAL: account id -> tier, from Avro Account records.
        builder.globalTable(env("PEER_ACCOUNTS", "abm.accounts"), Consumed.with(Serdes.String(), Serdes.ByteArray()),
            Materialized.<String, byte[], KeyValueStore<Bytes, byte[]>>as("tal"));
        // Cached like a DSL aggregation's store: the changelog gets each account's latest state per
        // commit, not one record per event.
        builder.addStateStore(Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore("accounts"), Serdes.String(), Serdes.ByteArray())
            .withCachingEnabled());

        var outputs = builder.stream(env("PEER_INPUT", "abm.engagement"), Consumed.with(Serdes.String(), Serdes.ByteArray()))
            .process(() -> new Processor<String, byte[], String, String>() {
                private ProcessorContext<String, String> context;
                private KeyValueStore<String, byte[]> states;
                private KeyValueStore<String, ValueAndTimestamp<byte[]>> tal;

                @Override
                public void init(ProcessorContext<String, String> context) {
                    this.context = context;
                    this.states = context.getStateStore("accounts");
                    this.tal = context.getStateStore("tal");
                }

                @Override
                public void process(Record<String, byte[]> record) {
                    GenericRecord event;
                    try {
                        event = events.decode(record.value());
                    } catch (IOException | RuntimeException e) {
                        return; // Undecodable input: ours keeps it in abm.rejected; the peer skips it.
                    }
                    Object accountField = event.get("account_id");
                    String account = accountField != null ? accountField.toString() : record.key();
                    if (account == null) {
                        return;
                    }
                    String tier = "untiered";
                    ValueAndTimestamp<byte[]> row = tal.get(account);
                    if (row != null && row.value() != null) {
                        try {
                            tier = accounts.decode(row.value()).get("tier").toString();
                        } catch (IOException | RuntimeException ignored) {
                            // Keep untiered.
                        }
                    }
                    AccountState state = AccountState.fromBytes(states.get(account));
                    List<Scoring.Crossing> crossings = Scoring.apply(account, state, event, tier);
                    states.put(account, state.toBytes());
                    for (Scoring.Crossing c : crossings) {
                        context.forward(new Record<>("c|" + account, c.toJson(), record.timestamp()));
                    }
                    String score = String.format(Locale.ROOT,
                        "{\"account_id\":\"%s\",\"score\":%.17g,\"engagement\":%.17g,\"breadth\":%d,\"as_of\":%d,\"applied\":%d,\"duplicates\":%d}",
                        account, Scoring.score(state), state.engagement, Scoring.breadth(state, state.asOf), state.asOf, state.applied, state.duplicates);
                    context.forward(new Record<>("s|" + account, score, record.timestamp()));
                }
            }, "accounts");
        outputs.filter((k, v) -> k.startsWith("c|")).selectKey((k, v) -> k.substring(2))
            .to(env("PEER_CROSSINGS", "abm.peer.score-crossings"), Produced.with(Serdes.String(), Serdes.String()));
        // Latest score per account, coalesced per commit by a cached table (the usual idiom; its
        // store needs no changelog: after a restore the next update is simply emitted).
        outputs.filter((k, v) -> k.startsWith("s|")).selectKey((k, v) -> k.substring(2))
            .toTable(Materialized.<String, String, KeyValueStore<Bytes, byte[]>>as("scores")
                .withKeySerde(Serdes.String()).withValueSerde(Serdes.String()).withCachingEnabled().withLoggingDisabled())
            .toStream()
            .to(env("PEER_SCORES", "abm.peer.account-scores"), Produced.with(Serdes.String(), Serdes.String()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.start();
        stopped.await();
    }
}
