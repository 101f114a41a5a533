export { ClinikProvider, useClinik } from "./context.js";
export {
  type AsyncState,
  type MutationState,
  type SearchState,
  useCreate,
  useDelete,
  useResource,
  useSearch,
  useUpdate,
} from "./hooks.js";
export {
  CodeableConceptDisplay,
  DateTimeDisplay,
  formatCodeableConcept,
  formatDateTime,
  formatHumanName,
  formatQuantity,
  HumanNameDisplay,
  QuantityDisplay,
} from "./display.js";
export { ObservationChart, chartPoints } from "./ObservationChart.js";
export { OperationOutcomeAlert } from "./OperationOutcomeAlert.js";
export { PatientBanner } from "./PatientBanner.js";
export { PatientForm, fieldOf } from "./PatientForm.js";
export { type Column, ResourceTable } from "./ResourceTable.js";
export { SearchInput } from "./SearchInput.js";
