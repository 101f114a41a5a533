// The components demo: a patient list, a chart and an edit form in one page, talking
// to ClinikAPI through server.mjs, which adds the API key server-side (the pattern the
// README recommends: a secret key never reaches the browser).
import { ClinikClient } from "@clinikapi/sdk";
import {
  ClinikProvider,
  DateTimeDisplay,
  HumanNameDisplay,
  ObservationChart,
  PatientBanner,
  PatientForm,
  ResourceTable,
  SearchInput,
  useResource,
} from "@clinikapi/react";
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";

const client = new ClinikClient({ baseUrl: `${window.location.origin}/fhir/R4` });
const BODY_WEIGHT = "http://loinc.org|29463-7";

function PatientPage({ id, onBack }: { id: string; onBack: () => void }) {
  const patient = useResource("Patient", id);
  return (
    <section aria-label="Patient chart">
      <button type="button" onClick={onBack}>
        Back to the list
      </button>
      <PatientBanner patientId={id} />
      <ObservationChart patientId={id} code={BODY_WEIGHT} />
      <h3>Edit</h3>
      {patient.data ? <PatientForm patient={patient.data} onSaved={patient.refetch} /> : null}
    </section>
  );
}

function App() {
  const [family, setFamily] = useState("");
  const [selected, setSelected] = useState<string | undefined>(undefined);
  return (
    <main>
      <h1>Clinic demo</h1>
      {selected ? (
        <PatientPage id={selected} onBack={() => setSelected(undefined)} />
      ) : (
        <>
          <SearchInput label="Family name" onSearch={setFamily} />
          <ResourceTable
            resourceType="Patient"
            caption="Patients"
            params={family ? { family } : {}}
            pageSize={10}
            onSelect={(p) => setSelected(p.id)}
            columns={[
              { header: "Name", render: (p) => <HumanNameDisplay value={p.name} /> },
              { header: "Born", render: (p) => <DateTimeDisplay value={p.birthDate} />, sortParam: "birthdate" },
            ]}
          />
        </>
      )}
    </main>
  );
}

createRoot(document.getElementById("root") as HTMLElement).render(
  <StrictMode>
    <ClinikProvider client={client}>
      <App />
    </ClinikProvider>
  </StrictMode>,
);
